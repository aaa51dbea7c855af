"""`whistle bench`: Whistle's performance figures, measured on this machine against the real Kafka and ClickHouse.

What the benchmark measures, and how, is told in `whistle.devtools.bench.phases`. One module per job;
callers import from the submodules (this package re-exports nothing):

- options      what to measure and how much (`BenchOptions`, `PHASES`, `MILLION`);
- events       the simulated events, encoded as the SDK sends them, and the breach phase's emergency reports;
- inprocess    the pure pipeline functions' rate in this process, no Kafka;
- passthrough  the plain confluent-kafka consume -> produce copier (a child process);
- changelog    the recovery phase's changelog of open cases, written by the bench;
- measure      ClickHouse visibility, case-event watching, per-process CPU and RSS, percentiles;
- kafka_admin  consumer-group lag, edge timestamps, topic creation and configuration;
- machine      the machine and stack the figures were measured on;
- report       the targets judged, and the figures printed as tables;
- phases       the run: every phase in order (`run_bench`).
"""
