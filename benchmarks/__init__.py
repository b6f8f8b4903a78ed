"""Table-reproduction and speed benchmarks for the five methods. The suite is tracked in issue 8."""
