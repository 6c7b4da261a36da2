"""The one-way layering of DESIGN.md section 3, checked by parsing imports."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Import order: a module may import only modules listed before it.
ORDER = [
    "types", "hostmem", "config", "checks", "registry_files", "action_set", "staging", "scalarization", "native", "topk", "kernels", "slates", "losses",
    "ope", "pareto", "bands", "bootstrap", "planning", "halves", "qnet", "model_io", "data.log_schema",
    "data.log_writer", "data.logs", "data.sim_world",
    "data.simulator", "data.obd_files", "data.obd", "serving", "scorer", "engine", "evaluation", "policy",
    "report_html_figures", "report_html", "report_estimates", "report_verdicts", "report_json",
    "report_figure", "report", "sweep_limits", "sweep_inputs", "sweep_truth", "sweep_job", "score_job", "reference", "cli_checks", "policy_checks", "policy_marks", "cli_plan",
    "cli_policy", "cli",
]
PURE = {"kernels", "topk", "registry_files", "slates", "losses", "ope", "pareto", "bands", "bootstrap", "planning", "halves",
        "reference", "scalarization", "types", "checks", "hostmem"}
HEAVY = ("flax", "grain", "orbax")


def _imports(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module == "puts_jax" or node.module == "puts_jax.data":
                out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _modules():
    for path in sorted((ROOT / "puts_jax").rglob("*.py")):
        rel = path.relative_to(ROOT / "puts_jax").with_suffix("")
        name = ".".join(rel.parts)
        if not name.endswith("__init__") and not name.endswith("__main__"):
            yield name, path


def test_every_module_is_placed_in_the_order():
    missing = [name for name, _ in _modules() if name not in ORDER]
    assert not missing, f"add {missing} to ORDER (and to docs/README.md's module table)"


def test_every_module_is_in_the_design_or_the_docs_module_table():
    """DESIGN.md section 3 is a read-only copy; modules added since are listed in docs/README.md."""
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    table = (ROOT / "docs" / "README.md").read_text()
    missing = [name for name in ORDER
               if f"{name.split('.')[-1]}.py" not in design and f"`{name}`" not in table]
    assert not missing, f"name {missing} in docs/README.md's module table"


def test_one_way_layering():
    for name, path in _modules():
        pos = ORDER.index(name)
        for imp in _imports(path):
            assert not imp.split(".")[0] in ("train", "bench"), f"{name} imports {imp}"
            if not imp.startswith("puts_jax."):
                continue
            target = imp[len("puts_jax."):]
            if target in ("data",):
                continue
            assert target in ORDER, f"{name} imports unknown {imp}"
            assert ORDER.index(target) < pos, f"{name} imports {imp}, which comes later"


def test_pure_modules_import_no_model_or_io_libraries():
    for name, path in _modules():
        if name in PURE:
            bad = [i for i in _imports(path) if i.split(".")[0] in HEAVY]
            assert not bad, f"{name} imports {bad}"
