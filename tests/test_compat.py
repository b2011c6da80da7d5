"""A torch / fbgemm_gpu pair that does not load gives one readable message, not a dlopen traceback."""

import subprocess
import sys
import textwrap

from lowprec._compat import _advice


def test_broken_fbgemm_names_both_versions(tmp_path):
    # A stand-in fbgemm_gpu package that fails the way a mismatched build does.
    pkg = tmp_path / "fbgemm_gpu"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise OSError('fbgemm_gpu_tbe_index_select.so: undefined symbol: _ZN3c104impl3cow')\n")
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        try:
            import lowprec
        except ImportError as exc:
            print(exc)
            sys.exit(3)
    """)
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "found torch 2.13" in r.stdout and "fbgemm-gpu-cpu 1.8.0" in r.stdout
    assert "fbgemm-gpu-cpu==1.8.0" in r.stdout and "undefined symbol" in r.stdout
    assert "Traceback" not in r.stdout


def test_advice_names_pair():
    msg = _advice("2.14.0", "1.9.0")
    assert "torch 2.14.0" in msg and "fbgemm-gpu-cpu 1.9.0" in msg and "torch==2.13" in msg
