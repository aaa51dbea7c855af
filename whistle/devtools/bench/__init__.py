"""`whistle bench`: Whistle's performance figures, measured on this machine against the real Kafka and ClickHouse.

What the benchmark measures, and how, is told in `whistle.devtools.bench.phases`. One module per job;
callers import from the submodules (this package re-exports nothing):

- options      what to measure and how much (`BenchOptions`, `PHASES`, `MILLION`);
- events       the simulated events, encoded as the SDK sends them, and the breach phase's emergency reports;
- inprocess    the pure pipeline functions' rate and outputs in this process, no Kafka;
- outputs      a Kafka run's case events, breaches and dead letters against the pure pipeline's;
- passthrough  the baseline copiers (child processes): plain consume -> produce, and the worker's topology at zero compute;
- changelog    the recovery phase's changelog of open cases, written by the bench;
- measure      ClickHouse visibility, case-event watching, per-process CPU and RSS, percentiles;
- kafka_admin  consumer-group lag, edge timestamps, record sizes, topic creation and configuration;
- machine      the machine and stack the figures were measured on;
- report       the targets judged, and the figures printed as tables;
- phases       the run: every phase in order (`run_bench`).
"""
