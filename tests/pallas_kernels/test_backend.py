"""Fails loudly when a JAX upgrade removes (or hard-disables) the Pallas Triton backend.

The kernels select the Triton backend with jax.experimental.pallas.triton.CompilerParams,
deprecated since jax 0.11. If this test fails after an upgrade: pin jax below the version,
or port the kernels (pallas_kernels/_compat.py is the one place to start), and meanwhile
serve with attention_impl="reference".
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from pallas_kernels import _compat, paged_decode_attention


def test_triton_backend_present():
    status = _compat.triton_backend_status()
    assert status["triton_module"], (
        f"jax {jax.__version__} removed jax.experimental.pallas.triton: "
        f"{status['import_error']}. The Pallas kernels cannot run; see this file's docstring.")
    assert status["has_compiler_params"] and status["has_load_store"], status
    assert not status["deprecation_accelerated"], (
        f"jax {jax.__version__} turned the Pallas Triton deprecation into an error.")


def test_triton_backend_lowers_and_deprecation_is_silenced():
    S = jax.ShapeDtypeStruct
    specs = (S((2, 8, 64), jnp.bfloat16), S((2, 16, 16, 64), jnp.bfloat16),
             S((2, 16, 16, 64), jnp.bfloat16), S((2, 4), jnp.int32), S((2,), jnp.int32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        # re-install our filter after simplefilter reset it: it is what importers get
        warnings.filterwarnings("ignore", message=_compat.TRITON_DEPRECATION_MESSAGE,
                                category=DeprecationWarning)
        text = _compat.lower_for_cuda(paged_decode_attention, *specs)
    assert _compat.TRITON_CUSTOM_CALL in text, "did not lower to the Triton custom call"
    assert not [w for w in caught if _compat.TRITON_DEPRECATION_MESSAGE in str(w.message)]
