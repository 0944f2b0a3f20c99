"""The fleet history store: PostgreSQL sharded by station, fed by MQTT ingest workers."""
