-- 005: who sent each raw record, as its credential proves it.
--
-- `sender` is the integrator whose record signature the sink verified against the key file in force
-- (streams/domain/credentials.py), '' when the record was unsigned or its signature did not verify
-- (the worker dead-letters such a record). Report ids are scoped by it (app:<sender>:<event_id>), and
-- the Open311 GET shows an integrator its own reports in full, others' only as public fields.
ALTER TABLE {db}.raw_events ADD COLUMN sender String DEFAULT '' AFTER decode_error;
