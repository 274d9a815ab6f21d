"""The Connection's pure logic (see actors/connection.py): the link state, at-least-once
delivery of frames, and the audit bookkeeping of requests. No threads, no I/O: the actor does
the sending, the timers and the peers, and asks these classes what to do."""
