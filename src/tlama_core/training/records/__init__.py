"""The run's records: one metrics row per logged step and its sinks (the CSV log, Lightning loggers), throughput
and MFU."""
