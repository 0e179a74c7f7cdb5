"""autocast switch: "auto" keeps CPUs in float32 (bf16 measured slower here), bad values are named."""
import pytest
import torch

from ps_interp.config import RunConfig
from ps_interp.errors import PsInterpError
from ps_interp.precision import autocast_context, resolve_autocast


def test_auto_is_float32_on_cpu_and_explicit_values_pass_through():
    cpu = torch.device("cpu")
    assert resolve_autocast("auto", cpu) is False
    assert resolve_autocast(True, cpu) is True and resolve_autocast(torch.float16, cpu) is torch.float16
    with autocast_context(cpu, True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast_context(cpu, "auto"):
        assert not torch.is_autocast_enabled("cpu")


def test_bad_autocast_values_get_clear_errors():
    with pytest.raises(PsInterpError, match="autocast"):
        resolve_autocast("fast", torch.device("cpu"))
    with pytest.raises(PsInterpError, match='allowed values: true, false, "auto"'):
        RunConfig.from_dict({"autocast": "bf16"})
    assert RunConfig().autocast == "auto"
