"""The 1/n theory of finite-width networks (Roberts-Yaida-Hanin): NTK fluctuations and
criticality (`finite_width`), the differential NTK (`dntk`), the nearly-kernel hierarchy and
its gradient flow (`hierarchy`), the ensemble mean of trained networks (`ensemble`).  Built on the
library tiers (arch, kernels, predict); their public names are re-exported as `ntklab.*`."""
