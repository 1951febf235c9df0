"""Jupyter protocol conformance (jupyter_kernel_test), as ipykernel tests itself."""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest

import jupyter_kernel_test as jkt


class PyRepl3KernelTests(jkt.KernelTests):
    kernel_name = "pyrepl3"
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        {"code": "{'a': 1}", "result": "{'a': 1}"},
    ]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))", "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\frac{1}{2}'))", "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    @classmethod
    def setUpClass(cls) -> None:
        # jupyter_kernel_test starts the kernel with os.environ: give it a store of its own.
        cls._home = tempfile.mkdtemp(prefix="pyrepl3-conformance-")
        cls._saved = {k: os.environ.get(k) for k in ("PYREPL3_HOME", "PYREPL3_SESSION")}
        os.environ["PYREPL3_HOME"] = cls._home
        os.environ["PYREPL3_SESSION"] = "conformance"
        try:
            super().setUpClass()
        finally:
            for key, value in cls._saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls._home, ignore_errors=True)

    def test_executions_are_durable(self) -> None:
        """The conformance kernel really is durable: its cells are in its own store."""
        from harness import executions

        reply, _ = self.execute_helper(code="'durable'")
        self.assertEqual(reply["content"]["status"], "ok")
        rows = executions(self._home, "conformance")
        self.assertIn(f"exec:{reply['parent_header']['msg_id']}", rows)


if __name__ == "__main__":
    unittest.main()
