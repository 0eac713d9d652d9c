"""Schema migrations of the PostgreSQL store (JSONB columns)."""

from lepton_edge.scheduler.migrations import Migration

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "fleet state",
        (
            """CREATE TABLE devices (
                device_id TEXT PRIMARY KEY,
                online BOOLEAN NOT NULL DEFAULT FALSE,
                birth_session BIGINT NOT NULL DEFAULT 0,
                death_session BIGINT NOT NULL DEFAULT 0,
                last_seen DOUBLE PRECISION NOT NULL DEFAULT 0,
                status_since DOUBLE PRECISION NOT NULL DEFAULT 0,
                offline_reason TEXT,
                capabilities JSONB NOT NULL DEFAULT '{}',
                operator_group TEXT,
                desired_version BIGINT NOT NULL DEFAULT 0,
                reported_version BIGINT NOT NULL DEFAULT 0,
                last_outcome TEXT,
                last_errors JSONB NOT NULL DEFAULT '[]',
                telemetry JSONB,
                telemetry_session BIGINT NOT NULL DEFAULT 0,
                telemetry_seq BIGINT NOT NULL DEFAULT 0,
                throttled BOOLEAN NOT NULL DEFAULT FALSE,
                temperature_c DOUBLE PRECISION,
                fps_capacity JSONB NOT NULL DEFAULT '{}',
                history_n BIGINT NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE telemetry_history (
                device_id TEXT NOT NULL,
                n BIGINT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                session_id BIGINT NOT NULL,
                seq BIGINT NOT NULL,
                data JSONB NOT NULL,
                PRIMARY KEY (device_id, n)
            )""",
            """CREATE TABLE workloads (
                workload_id TEXT PRIMARY KEY,
                source_uri TEXT NOT NULL,
                model TEXT NOT NULL,
                artifact JSONB,
                required_fps DOUBLE PRECISION NOT NULL,
                pinned_device TEXT,
                group_name TEXT,
                accelerator TEXT,
                runtime TEXT,
                config JSONB NOT NULL DEFAULT '{}',
                created_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE assignments (
                workload_id TEXT PRIMARY KEY REFERENCES workloads (workload_id) ON DELETE CASCADE,
                device_id TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'failed')),
                desired_version BIGINT NOT NULL,
                since DOUBLE PRECISION NOT NULL,
                reason TEXT
            )""",
            "CREATE INDEX assignments_device ON assignments (device_id)",
            """CREATE TABLE events (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                time DOUBLE PRECISION NOT NULL,
                kind TEXT NOT NULL,
                device_id TEXT,
                workload_id TEXT,
                severity TEXT NOT NULL,
                message TEXT NOT NULL,
                details JSONB NOT NULL DEFAULT '{}'
            )""",
            """CREATE TABLE leader (
                singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
                replica_id TEXT NOT NULL,
                since DOUBLE PRECISION NOT NULL,
                pid INTEGER
            )""",
        ),
    ),
    Migration(
        2,
        "API tokens and the append-only audit log",
        (
            """CREATE TABLE api_tokens (
                token_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
                secret_hash TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                created_by TEXT NOT NULL,
                revoked_at DOUBLE PRECISION
            )""",
            """CREATE TABLE audit_log (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
                actor TEXT NOT NULL,
                role TEXT,
                action TEXT NOT NULL,
                target TEXT,
                status INTEGER NOT NULL,
                remote TEXT,
                detail JSONB NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX audit_log_ts ON audit_log (ts)",
            """CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP; END $$""",
            """CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
                FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()""",
            """CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
                FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()""",
        ),
    ),
    Migration(
        3,
        "staged rollouts",
        (
            """CREATE TABLE rollouts (
                rollout_id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                revision BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                document JSONB NOT NULL
            )""",
            "CREATE INDEX rollouts_state ON rollouts (state)",
        ),
    ),
]
