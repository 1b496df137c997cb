"""The JS client's tests run against real gateway and worker processes (the fault-test stack)."""

from tests.faults.conftest import proc_stack  # noqa: F401
