"""Dev tools: benchmark, simulator, feeder, demo and the process harness. No worker imports them."""
