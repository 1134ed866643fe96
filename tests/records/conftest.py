from tests.pgserver import pg_empty_url, pg_server, pg_session_url, pg_url

__all__ = ["pg_empty_url", "pg_server", "pg_session_url", "pg_url"]
