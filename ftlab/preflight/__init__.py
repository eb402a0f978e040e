"""The preflight checks: ``ftlab doctor`` (``system``: will the course run here?) and ``ftlab doctor --gpu`` /
``make gpu-check`` (``gpu_check``: the GPU paths, and the estimator against measurements). Both report
:class:`~ftlab.preflight.checks.Check` rows."""

# The package's public names: imported from here by notebooks, tests and other packages.
from ftlab.preflight.system import doctor
