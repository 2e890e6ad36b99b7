"""study: grids of runs, aggregation, statistics, reports."""
