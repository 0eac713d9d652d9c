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
]
