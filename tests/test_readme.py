"""The README's Python examples run as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

# examples that train for minutes; test_train.py's test_train_from_python_runs_and_resumes_from_a_path
# runs the same calls on a model small enough for a unit test
TRAINING_EXAMPLE = "from bdh.train import train"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    quick = [b for b in blocks if TRAINING_EXAMPLE not in b]
    assert quick and len(blocks) - len(quick) == 1
    namespace = {}
    for block in quick:  # one namespace: later examples use earlier ones' names, as a reader would
        exec(compile(block, str(README), "exec"), namespace)
