"""Schema migrations of the SQLite store (JSON kept as TEXT, booleans as 0/1)."""

from lepton_edge.scheduler.migrations import Migration

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "fleet state",
        (
            """CREATE TABLE devices (
                device_id TEXT PRIMARY KEY,
                online INTEGER NOT NULL DEFAULT 0,
                birth_session INTEGER NOT NULL DEFAULT 0,
                death_session INTEGER NOT NULL DEFAULT 0,
                last_seen REAL NOT NULL DEFAULT 0,
                status_since REAL NOT NULL DEFAULT 0,
                offline_reason TEXT,
                capabilities TEXT NOT NULL DEFAULT '{}',
                operator_group TEXT,
                desired_version INTEGER NOT NULL DEFAULT 0,
                reported_version INTEGER NOT NULL DEFAULT 0,
                last_outcome TEXT,
                last_errors TEXT NOT NULL DEFAULT '[]',
                telemetry TEXT,
                telemetry_session INTEGER NOT NULL DEFAULT 0,
                telemetry_seq INTEGER NOT NULL DEFAULT 0,
                throttled INTEGER NOT NULL DEFAULT 0,
                temperature_c REAL,
                fps_capacity TEXT NOT NULL DEFAULT '{}',
                history_n INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE telemetry_history (
                device_id TEXT NOT NULL,
                n INTEGER NOT NULL,
                ts REAL NOT NULL,
                session_id INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                data TEXT NOT NULL,
                PRIMARY KEY (device_id, n)
            )""",
            """CREATE TABLE workloads (
                workload_id TEXT PRIMARY KEY,
                source_uri TEXT NOT NULL,
                model TEXT NOT NULL,
                artifact TEXT,
                required_fps REAL NOT NULL,
                pinned_device TEXT,
                group_name TEXT,
                accelerator TEXT,
                runtime TEXT,
                config TEXT NOT NULL DEFAULT '{}',
                created_at REAL NOT NULL
            )""",
            """CREATE TABLE assignments (
                workload_id TEXT PRIMARY KEY REFERENCES workloads (workload_id) ON DELETE CASCADE,
                device_id TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'failed')),
                desired_version INTEGER NOT NULL,
                since REAL NOT NULL,
                reason TEXT
            )""",
            "CREATE INDEX assignments_device ON assignments (device_id)",
            """CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                time REAL NOT NULL,
                kind TEXT NOT NULL,
                device_id TEXT,
                workload_id TEXT,
                severity TEXT NOT NULL,
                message TEXT NOT NULL,
                details TEXT NOT NULL DEFAULT '{}'
            )""",
            """CREATE TABLE leader (
                singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
                replica_id TEXT NOT NULL,
                since REAL NOT NULL,
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
                created_at REAL NOT NULL,
                created_by TEXT NOT NULL,
                revoked_at REAL
            )""",
            """CREATE TABLE audit_log (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                ts REAL NOT NULL,
                actor TEXT NOT NULL,
                role TEXT,
                action TEXT NOT NULL,
                target TEXT,
                status INTEGER NOT NULL,
                remote TEXT,
                detail TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX audit_log_ts ON audit_log (ts)",
            """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
                BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END""",
            """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
                BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END""",
        ),
    ),
    Migration(
        3,
        "staged rollouts",
        (
            """CREATE TABLE rollouts (
                rollout_id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                revision INTEGER NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                document TEXT NOT NULL
            )""",
            "CREATE INDEX rollouts_state ON rollouts (state)",
        ),
    ),
]
