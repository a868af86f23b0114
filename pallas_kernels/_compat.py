"""Every version-sensitive JAX / Pallas import of pallas_kernels lives here.

The kernels use the Pallas *Triton* backend: `pl.pallas_call(...,
compiler_params=jax.experimental.pallas.triton.CompilerParams(num_warps=..., num_stages=...))`.
That backend is deprecated since jax 0.11 (a DeprecationWarning at lowering time, id
"jax-pallas-triton") but works in 0.11.x and 0.12.x; Mosaic GPU is Hopper-only with a
faster-moving API. We silence that one warning (and record that it applies in
`TRITON_DEPRECATED`), and `tests/pallas_kernels/test_backend.py` fails loudly when an
upgrade removes or hard-disables the backend.
"""
from __future__ import annotations

import contextlib
import warnings

import jax
from jax.experimental import pallas as pl  # noqa: F401  (re-exported)

try:  # jax >= 0.9: the Triton backend's public module.
    from jax.experimental.pallas import triton as _plgpu
    TRITON_IMPORT_ERROR: Exception | None = None
except ImportError as e:  # pragma: no cover - only on a JAX that dropped the backend
    _plgpu = None
    TRITON_IMPORT_ERROR = e

TRITON_DEPRECATION_MESSAGE = "The Pallas Triton backend is deprecated"
TRITON_DEPRECATION_ID = "jax-pallas-triton"
# The custom-call target a Triton-backend pallas_call lowers to ("__gpu$xla.gpu.triton").
TRITON_CUSTOM_CALL = getattr(_plgpu, "CUSTOM_CALL_TARGET_NAME", "__gpu$xla.gpu.triton")

# Lowering emits the deprecation through warnings.warn; keep it out of users' logs.
warnings.filterwarnings("ignore", message=TRITON_DEPRECATION_MESSAGE, category=DeprecationWarning)


def _triton_deprecated() -> bool:
    try:
        from jax._src import deprecations
    except ImportError:  # pragma: no cover
        return False
    return TRITON_DEPRECATION_ID in getattr(deprecations, "_registered_deprecations", {})


TRITON_DEPRECATED: bool = _triton_deprecated()


def triton_backend_status() -> dict:
    """Whether the Triton backend is usable with this JAX: for tests and the GPU check."""
    try:
        from jax._src import deprecations
        accelerated = bool(deprecations.is_accelerated(TRITON_DEPRECATION_ID))
    except (ImportError, AttributeError, KeyError):  # pragma: no cover
        accelerated = False
    return {
        "jax_version": jax.__version__,
        "triton_module": _plgpu is not None,
        "import_error": None if TRITON_IMPORT_ERROR is None else repr(TRITON_IMPORT_ERROR),
        "has_compiler_params": _plgpu is not None and hasattr(_plgpu, "CompilerParams"),
        "has_load_store": (_plgpu is not None and hasattr(_plgpu, "load")
                           and hasattr(_plgpu, "store")),
        "deprecated": TRITON_DEPRECATED,
        "deprecation_accelerated": accelerated,
    }


def _require_triton():
    if _plgpu is None:
        raise RuntimeError(
            f"jax {jax.__version__} has no jax.experimental.pallas.triton "
            f"({TRITON_IMPORT_ERROR!r}); the Pallas kernels need the Triton backend. "
            "Use the *_reference functions (attention_impl='reference').")
    return _plgpu


def compiler_params(num_warps: int, num_stages: int):
    """Compiler params that select the Pallas Triton backend."""
    return _require_triton().CompilerParams(num_warps=num_warps, num_stages=num_stages)


def load(ref, *, mask=None, other=None):
    """Masked load (Triton backend): lanes where mask is False read `other`."""
    return _require_triton().load(ref, mask=mask, other=other)


def store(ref, val, *, mask=None):
    """Masked store (Triton backend): lanes where mask is False are left untouched."""
    return _require_triton().store(ref, val, mask=mask)


def abstract_cuda_mesh(device_kind: str = "NVIDIA H100 80GB HBM3", num_cores: int = 132):
    """An AbstractMesh on an abstract CUDA device: lets Triton lowering run without a GPU.

    Use as `with jax.sharding.use_abstract_mesh(abstract_cuda_mesh()): jax.jit(f).trace(
    *specs).lower(lowering_platforms=("cuda",))`.
    """
    dev = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=num_cores,
                                      platform="cuda")
    return jax.sharding.AbstractMesh((1,), ("x",), abstract_device=dev)


@contextlib.contextmanager
def cuda_lowering_context(device_kind: str = "NVIDIA H100 80GB HBM3", num_cores: int = 132):
    """Context in which `.lower(lowering_platforms=("cuda",))` works on a CPU-only host."""
    with jax.sharding.use_abstract_mesh(abstract_cuda_mesh(device_kind, num_cores)):
        yield


def lower_for_cuda(fn, *args, **kwargs) -> str:
    """StableHLO text of jax.jit(fn) lowered for CUDA, args being ShapeDtypeStructs."""
    with cuda_lowering_context():
        lowered = jax.jit(fn).trace(*args, **kwargs).lower(lowering_platforms=("cuda",))
    return lowered.as_text()


@contextlib.contextmanager
def capture_triton_modules():
    """Collects the Triton-dialect MLIR text of every Triton pallas_call lowered inside.

    Hooks a private JAX function (jax._src.pallas.triton.lowering.
    lower_jaxpr_to_triton_module, present in jax 0.11-0.12), so it lives here with the
    other version-sensitive code; RuntimeError if a JAX upgrade moved it. Yields the list
    the module texts are appended to.
    """
    try:
        from jax._src.pallas.triton import pallas_call_registration as registration
    except ImportError as e:  # pragma: no cover - only on a JAX that moved it
        raise RuntimeError(f"jax {jax.__version__}: no Pallas Triton registration") from e
    lowering = getattr(registration, "lowering", None)
    original = getattr(lowering, "lower_jaxpr_to_triton_module", None)
    if original is None:  # pragma: no cover
        raise RuntimeError(f"jax {jax.__version__}: lower_jaxpr_to_triton_module moved")
    modules: list[str] = []

    def hooked(*args, **kwargs):
        result = original(*args, **kwargs)
        modules.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    lowering.lower_jaxpr_to_triton_module = hooked
    try:
        yield modules
    finally:
        lowering.lower_jaxpr_to_triton_module = original
