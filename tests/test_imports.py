"""No import circles: imports go one way, from data/ up to curriculum.py.

A circle (a imports b, b imports a, directly or through others) forces one side into a
lazy import inside a function, and makes the files impossible to read bottom-up. The
check reads the source with `ast`, so it sees every import, including those inside
functions that an import-time check would miss.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def first_party_modules(root=ROOT):
    """{module name: file} for the repo's own modules: top-level .py files, data/, bench/."""
    mods = {}
    for sub in ("", "data", "bench"):
        folder = os.path.join(root, sub)
        for f in sorted(os.listdir(folder)):
            if f.endswith(".py") and f != "__init__.py":
                mods[".".join(filter(None, [sub, f[:-3]]))] = os.path.join(folder, f)
    return mods


def imports_of(path, mods):
    """The first-party modules a file imports anywhere (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from data import task` names a module; `from data.task import x` a name in one
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in mods}
    return found


def find_cycle(graph):
    """One import circle as a list [a, b, ..., a], or None. Depth-first search: a cycle is
    an edge back to a module still on the current path."""
    state, path = {}, []  # state: 1 = on the current path, 2 = done

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_find_cycle_finds_direct_and_indirect_circles():
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no circle


def test_imports_of_sees_imports_inside_functions(tmp_path):
    (tmp_path / "x.py").write_text("import os\nfrom y import f\n\ndef g():\n    import z\n")
    mods = {"x": "", "y": "", "z": "", "data.task": ""}
    assert imports_of(str(tmp_path / "x.py"), mods) == {"y", "z"}
    (tmp_path / "w.py").write_text("from data.task import load_task\nfrom data import task\n")
    assert imports_of(str(tmp_path / "w.py"), mods) == {"data.task"}


def test_no_first_party_module_imports_one_that_imports_it_back():
    mods = first_party_modules()
    assert {"curriculum", "eval_math", "schedule", "sample", "tracerl", "data.task"} <= set(mods)
    # the card's layout: one file per stage (the sampler and TraceRL's steps are not split up)
    assert not {"fast_sample", "rollouts", "traces"} & set(mods)
    graph = {m: imports_of(p, mods) - {m} for m, p in mods.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the grading the RL reward uses is the task's, not the evaluation script's
    assert "eval_math" not in graph["tracerl"] and "data.task" in graph["tracerl"]
    # evaluation sits below the Ŝ analysis and the curriculum that hand it their pieces
    assert not {"schedule", "curriculum"} & graph["eval_math"]
    # dist is a leaf: any module may use it (eval_math deals evaluations across ranks)
    assert graph["dist"] == set() and "dist" in graph["eval_math"]
    # one TraceRL step reads in tracerl.py, sample.py and model.py (and value.py's option)
    assert graph["tracerl"] - {"dist", "data.task", "data.tokenizer", "train"} == {"sample", "model", "value"}
