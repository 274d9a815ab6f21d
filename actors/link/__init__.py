"""The transports: the WebSocket to DockMon and the stats-ingest socket."""
