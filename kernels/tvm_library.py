"""Each kernel compiled once per process: a network for timing is linked from compiled kernels.

`tvm.compile` of a whole network sends every kernel through LLVM again, on one thread: 3-5 s a
tinynet candidate here, most of a transfer search's compile time, though consecutive candidates
share most of their kernels and the transfer pick has just compiled the schedules it chose.

`KernelLibrary.executable` runs the Relax pipeline, names each kernel (a scheduled TIR function)
after its structural hash and the target, compiles only the kernels it has not compiled before
(on as many threads as the host has cores), and links the Relax VM's bytecode against them.
Compiled kernels are registered as global functions under those names, where the VM finds them:
imported as modules, each of the VM's lookups searched every kernel module, about 3 s a network.
`adopt` takes in a kernel compiled elsewhere (the pick's replays, tuning's winners: `kernels.
tvm_tuning._Fastest`), under the name it would get.

An executable linked so lives in this process only: exports compile the whole network
(`tvm_compile.build`)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from kernels.tvm_compile import host_cores, load_tvm

# attributes that do not change a kernel's code: its symbol, and what Relax and MetaSchedule note
# on it (the pick compiles a replay without them; the network's copy has them)
_NOTES = ("global_symbol", "op_pattern", "tirx.is_scheduled")


def kernel_name(func, target) -> str:
    """The name `KernelLibrary` gives a scheduled kernel (a TIR PrimFunc) compiled for `target`:
    its structural hash (without `_NOTES`) and the target's; compile it under this name (`named`)
    for `adopt`."""
    import zlib

    from tvm_ffi import structural_hash

    for a in _NOTES:
        func = func.without_attr(a)
    h = structural_hash(func)
    return f"archsearch_k{h & 0xFFFFFFFFFFFF:012x}_{zlib.crc32(str(target).encode()):08x}"


def named(func, name: str):
    """An IRModule holding `func` alone under `name`."""
    tvm = load_tvm()
    return tvm.IRModule({name: func.with_attr("global_symbol", name)})


class KernelLibrary:
    """The kernels this process compiled for `target`, by `kernel_name`. Each compiled kernel
    keeps its LLVM module alive, about 2 MB of memory here (144 tinynet kernels kept: 294 MB), so
    `keep` bounds the library at about 2 GB; a kernel linked again after it went is compiled
    again (0.13 CPU-s). The default run's search links about 800."""

    def __init__(self, target, keep: int = 1024):
        self.target, self.keep = target, keep
        # least recently linked first: past `keep` kernels, the first go
        self._names: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"kernels_compiled": 0, "kernels_reused": 0, "kernels_adopted": 0}

    def adopt(self, name: str, lib, symbol: str | None = None) -> bool:
        """A runtime module compiled elsewhere whose function `symbol` (default `name`) is the
        kernel of that name. False if the library has it already."""
        if name in self._names:
            return False
        self._register(name, lib, symbol)
        self.stats["kernels_adopted"] += 1
        self._evict()
        return True

    def _register(self, name: str, lib, symbol: str | None = None) -> None:
        import tvm_ffi

        f = lib[symbol or name]  # the lookup generates the code; the function keeps its module
        with self._lock:
            tvm_ffi.register_global_func(name, f, override=True)
            self._names[name] = None

    def _evict(self, linking=()) -> None:
        """Past `keep` kernels, the least recently linked go, except those being linked (a VM
        linked before keeps its own reference to each of its kernels)."""
        import tvm_ffi

        with self._lock:
            extra = len(self._names) - self.keep
            for name in [n for n in self._names if n not in linking][: max(0, extra)]:
                del self._names[name]
                tvm_ffi.remove_global_func(name)

    def _compile(self, items: list[tuple[str, object]]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        tvm = load_tvm()

        def one(item):
            name, func = item
            self._register(name, tvm.tirx.build(named(func, name), target=self.target))

        with ThreadPoolExecutor(max(1, min(len(items), host_cores()))) as pool:
            list(pool.map(one, items))
        self.stats["kernels_compiled"] += len(items)

    def executable(self, mod):
        """A Relax VM executable of `mod` (a prepared Relax module, tuned schedules applied),
        its kernels from this library (compiled now where missing)."""
        load_tvm()
        from tvm import relax
        from tvm.relax.vm_build import _vmcodegen, _vmlink

        with self.target:
            mod = relax.get_pipeline("default")(mod)
        mod, kernels = self._renamed(mod)
        with self._lock:
            todo = {n: f for n, f in kernels.items() if n not in self._names}
            for n in kernels.keys() - todo.keys():
                self._names.move_to_end(n)  # linked now: the last to go
        self.stats["kernels_reused"] += len(kernels) - len(todo)
        if todo:
            self._compile(list(todo.items()))
            self._evict(kernels)
        builder = relax.ExecBuilder()
        _vmcodegen(builder, mod, "bytecode")
        return _vmlink(builder, self.target, tir_mod=None, ext_libs=[])

    def _renamed(self, mod):
        """`mod` with each kernel renamed to its `kernel_name` (calls rewritten), and the kernels
        by name."""
        tvm = load_tvm()
        from tvm import relax
        from tvm.tirx import PrimFunc

        bb, renames, kernels = relax.BlockBuilder(mod), {}, {}
        for gv, f in mod.functions.items():
            if isinstance(f, PrimFunc):
                name = kernel_name(f, self.target)
                kernels[name] = f
                renames[gv] = bb.add_func(f.with_attr("global_symbol", name), name)
        renamer = _renamer(renames)
        for gv, f in mod.functions.items():
            if not isinstance(f, PrimFunc):
                bb.update_func(gv, renamer(bb.get()).visit_expr(f))
        out = bb.get()
        keep = {gv: f for gv, f in out.functions.items() if gv not in renames}
        return tvm.IRModule(keep, attrs=out.attrs), kernels


def _renamer(renames: dict):
    """A Relax mutator class whose instances replace the global variables in `renames`."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Renamer(PyExprMutator):
        def visit_global_var_(self, gv):
            return renames.get(gv, gv)

    return Renamer
