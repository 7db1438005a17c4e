"""``%remote_eval VAR`` and ``%addrules NS VAR`` (code held in kernel variables), and syntax errors
in remote and rule code reported as one line with the line number and a caret."""

import pytest
from IPython.core.error import UsageError

from tests.support import run


@pytest.fixture(scope="module")
def shell(ip):
    run(ip, "%cluster start -n 2")
    yield ip
    run(ip, "%cluster stop")


def test_remote_eval_and_addrules_send_the_code_held_in_variables(shell, capsys):
    run(shell, 'newfunctions = "def triple(x):\\n    return 3 * x\\nprint(\'loaded\')"')
    run(shell, "%remote_eval newfunctions")
    assert capsys.readouterr().out.count("loaded") == 2            # on each of the 2 workers
    run(shell, 'newrules = "def tripled(x):\\n    return ApplyFn(triple, x)()"')
    run(shell, "%addrules calc newrules")
    assert run(shell, "from julius_magics import compute, ref\ncompute(ref.calc.tripled(14))") == 42


def test_line_forms_read_the_source_of_functions_and_push(shell, capsys):
    run(shell, "offset = 100")
    run(shell, "def shifted(x):\n    return x + offset")
    run(shell, "%remote_eval shifted --push offset")
    run(shell, "def shift(x):\n    return ApplyFn(shifted, x)()")
    run(shell, "%addrules calc shift")
    assert run(shell, "compute(ref.calc.shift(1))") == 101


def test_line_form_mistakes_are_usage_errors(shell):
    with pytest.raises(UsageError, match="no variable named 'nothing'"):
        shell.run_line_magic("remote_eval", "nothing")
    with pytest.raises(UsageError, match="must hold code"):
        run(shell, "number = 3")
        shell.run_line_magic("addrules", "calc number")
    with pytest.raises(UsageError, match="needs a variable"):
        shell.run_line_magic("remote_eval", "")


@pytest.mark.parametrize("magic, line", [("remote_eval", ""), ("addrules", "calc")])
def test_syntax_error_in_a_cell_is_one_line_with_its_line_number_and_a_caret(shell, magic, line):
    with pytest.raises(UsageError) as caught:
        shell.run_cell_magic(magic, line, "x = 1\ny = (2 +)\nz = 3\n")
    message = str(caught.value)
    head, code, caret = message.splitlines()
    # the %%magic line is line 1 of the cell, so the body's line 2 is the cell's line 3
    assert head.startswith(f"SyntaxError in %%{magic}") and ", line 3: " in head, head
    assert code.strip() == "y = (2 +)"
    assert caret.index("^") == code.index(")")   # the caret points at the bad token
    assert "Traceback" not in message and "julius_magics" not in message


def test_syntax_error_in_a_variable_names_the_variable(shell):
    run(shell, 'broken = "a = 1\\nif a\\n    b = 2"')
    with pytest.raises(UsageError, match=r"SyntaxError in %addrules calc broken, line 2: "):
        shell.run_line_magic("addrules", "calc broken")


def test_notebook_shows_no_traceback_for_a_syntax_error(tmp_path):
    """In a real kernel the cell fails with one message and no julius frames."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("%load_ext julius_magics"),
                                         nbformat.v4.new_code_cell("%%addrules ml\ndef f(:\n    pass")])
    with pytest.raises(CellExecutionError):
        NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    outputs = nb.cells[1].outputs
    text = "".join(o.get("text", "") + "".join(o.get("traceback", [])) for o in outputs)
    assert "SyntaxError in %%addrules ml cell, line 2" in text
    assert "julius_magics" not in text and "File " not in text
