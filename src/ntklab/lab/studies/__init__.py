"""The computations of the experiments, one module per study (the experiments only configure,
call them and report)."""
