"""setup.py and the no-extension fallback: RMT_NO_EXT=1 builds nothing, RMT_REQUIRE_EXT=1 turns a failed
extension build into a failed install (what run_all.sh asks for wherever a C++ compiler exists), and with the
extension blocked rmt_kernels runs its pure-torch references. No compiling: a few seconds in all."""
import os
import runpy
import subprocess
import sys
import textwrap

import pytest
import setuptools

from conftest import REPO


@pytest.fixture
def setup_py(monkeypatch):
    """Run setup.py with setuptools.setup() replaced: returns (its globals, the keywords setup() got)."""
    got = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: got.update(kw))
    monkeypatch.setenv("RMT_NO_EXT", "1")  # the module-level call: cheap, nothing imported from torch
    monkeypatch.delenv("RMT_REQUIRE_EXT", raising=False)
    namespace = runpy.run_path(str(REPO / "setup.py"))
    monkeypatch.delenv("RMT_NO_EXT")
    return namespace, got


def test_setup_without_extension_when_asked(setup_py, monkeypatch):
    namespace, got = setup_py
    assert got["ext_modules"] == [] and got["cmdclass"] == {}
    monkeypatch.setenv("RMT_NO_EXT", "1")
    monkeypatch.setenv("RMT_REQUIRE_EXT", "1")  # RMT_NO_EXT wins: asking for no extension is not a failure
    assert namespace["extension_modules"]() == ([], {})


def test_setup_requires_a_torch_with_cpu_fused_adamw(setup_py):
    _, got = setup_py
    assert "torch>=2.4" in got["install_requires"]  # experiments/train.py: AdamW(fused=True) on CPU


def test_setup_declares_the_extension(setup_py):
    namespace, _ = setup_py
    modules, cmdclass = namespace["extension_modules"]()
    assert [m.name for m in modules] == ["rmt_kernels._C"]
    assert any(s.endswith("accumulate.cpp") for s in modules[0].sources)
    assert set(cmdclass) == {"build_ext"}


def test_a_failed_extension_build_fails_only_when_required(setup_py, monkeypatch, capsys):
    """The cheap stand-in for a broken kernel source: the compile step (BuildExtension.run) raises."""
    from torch.utils.cpp_extension import BuildExtension

    namespace, _ = setup_py
    build_ext = namespace["extension_modules"]()[1]["build_ext"]

    def broken_compile(self):
        raise RuntimeError("Error compiling objects for extension")

    monkeypatch.setattr(BuildExtension, "run", broken_compile)
    command = object.__new__(build_ext)  # run() needs nothing of a configured command here
    monkeypatch.setenv("RMT_REQUIRE_EXT", "1")
    with pytest.raises(RuntimeError, match="Error compiling objects"):
        command.run()
    monkeypatch.delenv("RMT_REQUIRE_EXT")
    command.run()  # a user without a working toolchain: the install goes on, with a warning
    err = capsys.readouterr().err
    assert "WARNING: the C++/CUDA extension did not build (Error compiling objects" in err
    assert "pure-torch reference ops" in err


def test_required_extension_without_torch_at_build_time_fails(setup_py, monkeypatch, capsys):
    namespace, _ = setup_py
    monkeypatch.setitem(sys.modules, "torch.utils.cpp_extension", None)  # import fails as without torch
    assert namespace["extension_modules"]() == ([], {})
    assert "torch is not importable at build time" in capsys.readouterr().err
    monkeypatch.setenv("RMT_REQUIRE_EXT", "1")
    with pytest.raises(ImportError):
        namespace["extension_modules"]()


def test_pure_torch_fallback_without_the_extension():
    """What a user without a compiler gets: a fresh interpreter in which rmt_kernels._C cannot be imported."""
    code = textwrap.dedent("""
        import sys
        sys.modules["rmt_kernels._C"] = None  # as if the extension had not been built
        import torch
        import rmt_kernels as rk
        from rmt_kernels import ops

        assert ops._C is None and isinstance(ops._EXT_ERROR, ImportError), ops._EXT_ERROR
        assert rk.backend() == rk.backend("cpu") == rk.backend("cuda") == "torch"
        try:
            rk.set_backend("ext")
        except RuntimeError as err:
            assert "pip install --no-build-isolation -e ." in str(err)
        else:
            raise AssertionError("set_backend('ext') without the extension must raise")

        g = torch.Generator().manual_seed(0)
        acts = torch.randn(3, 6, 37, generator=g)
        mask = torch.rand(3, 6, generator=g) < 0.7
        def acc():
            return ([torch.zeros(37, dtype=torch.float64) for _ in range(3)]
                    + [torch.zeros(37, dtype=torch.int64), torch.zeros((), dtype=torch.int64), torch.zeros(3, 37)])
        got, want = acc(), acc()
        rk.accumulate_(acts, mask, *got)
        rk.accumulate_ref(acts, mask, *want)
        assert int(got[4]) == int(mask.sum()) > 0
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        sq, sq_ref = [torch.zeros(37, dtype=torch.float64), torch.zeros((), dtype=torch.int64)], \\
                     [torch.zeros(37, dtype=torch.float64), torch.zeros((), dtype=torch.int64)]
        rk.accumulate_sq_diff_(acts, acts.flip(0).contiguous(), mask, *sq)
        rk.accumulate_sq_diff_ref(acts, acts.flip(0).contiguous(), mask, *sq_ref)
        assert all(torch.equal(a, b) for a, b in zip(sq, sq_ref))

        scores = torch.randn(4, 37, generator=g)
        indices, threshold = rk.top_tau(scores, 10)
        indices_ref, threshold_ref = rk.top_tau_ref(scores, 10)
        assert indices.shape == (15, 2) and torch.equal(indices, indices_ref) and threshold == threshold_ref
        print("fallback ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fallback ok" in result.stdout


def test_installing_shadows_no_module_named_common_and_keeps_pytest_out_of_the_runtime(setup_py, tmp_path):
    """Issue #18: `pip install -e .` must not put a top-level `common` into site-packages (a name any project may
    use), and pytest (and trl) are test extras, not runtime requirements."""
    _, got = setup_py
    assert "py_modules" not in got and got["packages"] == ["rmt_kernels"]
    assert not any(r.startswith(("pytest", "trl")) for r in got["install_requires"])
    assert got["extras_require"] == {"test": ["pytest", "trl>=1.0"]}  # trl: an RM trained by another tool
    found = subprocess.run([sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('common'))"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert found == "None", f"an installed module shadows `common`: {found}"
