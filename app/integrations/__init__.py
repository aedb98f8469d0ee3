"""Where recognition events and pipeline health go beyond the window and the files.

- `events`: the event fan-out of the sink process (snapshot, then a non-blocking put into a bounded queue)
  and the parent side that reads that queue.
- `snapshots`: JPEG face crops (and optionally whole frames) per event, and their retention.
- `discovery`: Home Assistant MQTT discovery payloads and topic names (pure functions).
- `mqtt`: the MQTT publisher (a thread of the parent process: never on the frame path), with its bounded
  buffer while the broker is away, reconnects, last will and discovery.
- `prometheus`: `/metrics` read from the same `PipelineMetrics` the JSON summary is made of.
- `runtime`: builds all of the above from `Settings` and runs them around a pipeline run.
"""
