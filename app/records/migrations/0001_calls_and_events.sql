-- Call records and their events (the same fields as the SQLite call log).
-- Times are timestamptz: `WHERE started_at > now() - interval '1 day'` reads naturally.
CREATE TABLE calls (
    call_id       text PRIMARY KEY,
    started_at    timestamptz NOT NULL,
    route         text NOT NULL,
    action        text NOT NULL,
    outcome       text NOT NULL,
    status        text NOT NULL CHECK (status IN ('active', 'answered', 'ended')),
    caller        text,
    called        text,
    rules_version text NOT NULL,
    ended_at      timestamptz,
    end_reason    text
);
CREATE INDEX calls_by_start ON calls (started_at);
CREATE INDEX calls_by_status ON calls (status, started_at);
CREATE INDEX calls_by_route ON calls (route, started_at);

-- No foreign key to calls: an event may arrive before its call's record.
-- event_id is chosen by the writer, so that a batch written again (its commit was not
-- confirmed) adds nothing twice; id keeps the order of events at the same time.
CREATE TABLE call_events (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    call_id  text NOT NULL,
    at       timestamptz NOT NULL,
    kind     text NOT NULL,
    data     jsonb NOT NULL
);
CREATE INDEX call_events_by_call ON call_events (call_id, at, id);
CREATE INDEX call_events_by_time ON call_events (at);
