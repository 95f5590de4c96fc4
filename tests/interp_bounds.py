"""Out-of-bounds checks for kernels run by Triton's interpreter: the CPU's stand-in for the GPU's
`compute-sanitizer --tool memcheck`.

Why: a masked load whose mask admits a lane past the end of a tensor reads memory the kernel does not own.
When no lane keeps the value, every output stays right, so no value test can see it; on a GPU it reads
another allocation (harmless until it is an unmapped page: then the kernel faults). The Mamba scan's
mutation audit had such a mutant (254: the backward's load of a stored state, its mask's `&` made `|`,
docs/testing.md) that the interpreter ran silently. Under `install`, every load, store and atomic a
kernel launches in the interpreter checks each address its mask admits against the storages of the
launch's tensor arguments (on CPU the interpreter runs on those very buffers), and an access outside all
of them fails the launch. What it cannot see: an access inside another argument's storage (the ranges
are the union of the arguments'), or past a tensor but inside its own storage (a view's).
"""
from __future__ import annotations

import numpy as np


class OutOfBounds(AssertionError):
    pass


def _storages(args) -> list:
    out = []
    for a in args:
        if isinstance(a, (tuple, list)):
            out += _storages(a)
        elif hasattr(a, "untyped_storage"):
            out.append(a.untyped_storage())
    return out


def check(ranges: list[tuple[int, int]], what: str, ptrs, mask) -> None:
    """Raise OutOfBounds when an address of `ptrs` (a TensorHandle of pointers) that `mask` admits (None:
    all) is not wholly inside one of `ranges` ([start, end) byte addresses)."""
    from triton.runtime import interpreter as ti

    addrs = np.asarray(ptrs.data, dtype=np.uint64)
    if mask is not None:
        addrs = addrs[np.broadcast_to(np.asarray(mask.data, dtype=bool), addrs.shape)]
    addrs = addrs.reshape(-1)
    if addrs.size == 0:
        return
    size = np.uint64(ti._get_np_dtype(ptrs.get_element_ty()).itemsize)
    inside = np.zeros(addrs.shape, dtype=bool)
    for start, end in ranges:
        inside |= (addrs >= np.uint64(start)) & (addrs + size <= np.uint64(end))
    if not inside.all():
        bad = addrs[~inside]
        raise OutOfBounds(f"out-of-bounds {what}: {bad.size} of {addrs.size} admitted addresses are outside every "
                          f"tensor argument's storage (the first at {int(bad[0]):#x}; arguments: "
                          + ", ".join(f"[{s:#x}, {e:#x})" for s, e in ranges) + ")")


def install(monkeypatch) -> None:
    """Check every kernel launched in Triton's interpreter (TRITON_INTERPRET=1) for the rest of the test."""
    from triton.runtime import interpreter as ti

    ranges: list[tuple[int, int]] = []
    real_init = ti.GridExecutor._init_args_hst
    B = ti.InterpreterBuilder
    real = {n: getattr(B, n) for n in ("create_masked_load", "create_masked_store", "create_atomic_rmw",
                                       "create_atomic_cas")}

    def init(self, args_dev, kwargs):
        args_hst, kwargs_hst = real_init(self, args_dev, kwargs)
        ranges[:] = sorted({(s.data_ptr(), s.data_ptr() + s.nbytes())
                            for s in _storages([*args_hst, *kwargs_hst.values()]) if s.nbytes()})
        return args_hst, kwargs_hst

    # the builders' trailing parameters differ between Triton releases (3.6: cache_modifier, eviction_policy;
    # 3.9: cache_policy), so only the leading ones, which every release shares, are named
    def load(self, ptrs, mask, *rest):
        check(ranges, "load", ptrs, mask)
        return real["create_masked_load"](self, ptrs, mask, *rest)

    def store(self, ptrs, value, mask, *rest):
        check(ranges, "store", ptrs, mask)
        return real["create_masked_store"](self, ptrs, value, mask, *rest)

    def rmw(self, rmwOp, ptr, val, mask, *rest):
        check(ranges, "atomic", ptr, mask)
        return real["create_atomic_rmw"](self, rmwOp, ptr, val, mask, *rest)

    def cas(self, ptr, *rest):
        check(ranges, "atomic compare-and-swap", ptr, None)
        return real["create_atomic_cas"](self, ptr, *rest)

    monkeypatch.setattr(ti.GridExecutor, "_init_args_hst", init)
    for name, fn in (("create_masked_load", load), ("create_masked_store", store), ("create_atomic_rmw", rmw),
                     ("create_atomic_cas", cas)):
        monkeypatch.setattr(B, name, fn)
