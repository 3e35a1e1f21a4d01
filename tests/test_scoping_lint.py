"""SQL on tenant tables lives in repository modules, where the scoped bases build it.

The lint parses every module under src/spawnpoint and reports, as `file:line: form, table`,
each `select(`, `session.get(` / `.get(Model, ...)`, `text(`, `insert(`, `update(`,
`delete(`, `exec_driver_sql(` or `.execute("...")` that touches a tenant table outside
them. Tenant tables are read from the SQLAlchemy metadata (every table with a `tenant_id`
column, plus `tenants`), so a new table is covered the day it is declared.

Repository modules, and why each may hold such SQL:
- `repository.py` in any folder: where SQL belongs; its classes derive from
  `ScopedRepository` or, visibly, `PlatformRepository` (checked below).
- `jobs/queue.py`: the queue claims, leases and settles jobs of every tenant; a worker
  has no tenant to scope by.
- `kit/idempotency.py`: claims a key for the tenant it is given, in one statement.
- `kit/inserts.py`: writes the rows handed to it in one round trip; it reads nothing.
- `db.py`: the engines and the transaction owner.
- `migrations/`: schema and data changes run once, with no caller.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

import spawnpoint
from spawnpoint import models  # noqa: F401  (registers every table)
from spawnpoint.db import Base
from spawnpoint.kit.repository import PlatformRepository, Repository, ScopedRepository
from spawnpoint.scope import TenantScope

SRC = Path(spawnpoint.__file__).parent
FIXTURE = Path(__file__).parent / "lint_fixtures" / "bad_service.py"
EXEMPT_FILES = ("jobs/queue.py", "kit/idempotency.py", "kit/inserts.py", "db.py")
EXEMPT_DIRS = ("migrations",)
STATEMENTS = {"select", "insert", "update", "delete"}
RAW = {"text", "exec_driver_sql"}


def tenant_tables() -> set[str]:
    return {name for name, table in Base.metadata.tables.items() if "tenant_id" in table.c} | {
        "tenants"
    }


def tenant_models() -> dict[str, str]:
    """Class name → table name of every mapped class on a tenant table."""
    tables = tenant_tables()
    found: dict[str, str] = {}
    for mapper in Base.registry.mappers:
        table = getattr(mapper.local_table, "name", None)
        if table in tables:
            found[mapper.class_.__name__] = table
    return found


@dataclass(frozen=True, order=True)
class Offence:
    path: str
    line: int
    form: str
    table: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.form}, {self.table}"


class ModuleLint:
    """The offences of one module: forbidden forms whose expression names a tenant table."""

    def __init__(self, tree: ast.Module, path: str) -> None:
        self.tree = tree
        self.path = path
        self.models = tenant_models()
        self.tables = tenant_tables()
        self.table_words = re.compile(
            r"\b(" + "|".join(sorted(map(re.escape, self.tables))) + r")\b", re.IGNORECASE
        )
        self.aliases = self._aliases()
        self.constants = self._constants()
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node

    def _aliases(self) -> dict[str, str]:
        """Local names of tenant models (`from spawnpoint.models import Workspace as W`)."""
        aliases = {name: name for name in self.models}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom):
                for imported in node.names:
                    if imported.name in self.models:
                        aliases[imported.asname or imported.name] = imported.name
        return aliases

    def _constants(self) -> dict[str, ast.expr]:
        """Module-level names bound once, so `SQL = "..."` then `execute(SQL)` is seen."""
        bound: dict[str, ast.expr] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    bound[target.id] = node.value
            elif (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.value is not None
            ):
                bound[node.target.id] = node.value
        return bound

    def offences(self) -> Iterator[Offence]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                yield from self._call(node)

    def _call(self, call: ast.Call) -> Iterator[Offence]:
        func = call.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name in STATEMENTS:
            # `session.delete(obj)`, `rows.insert(0, x)`, `router.delete(...)` are not SQL;
            # `Workspace.__table__.delete()` is.
            if isinstance(func, ast.Attribute) and not self._tables_in(func.value):
                return
            for table in self._tables_in(self._chain(call)):
                yield self._offence(call, f"{name}(", table)
        elif name in RAW:
            for table in self._tables_in_sql(call.args[:1]):
                yield self._offence(call, f"{name}(", table)
        elif name == "execute" and isinstance(func, ast.Attribute) and self._is_string(call):
            for table in self._tables_in_sql(call.args[:1]):
                yield self._offence(call, '.execute("...")', table)
        elif name == "get" and isinstance(func, ast.Attribute) and call.args:
            receiver = func.value
            is_session = isinstance(receiver, ast.Name | ast.Attribute) and (
                "session" in ast.unparse(receiver)
            )
            for table in self._tables_in(call.args[0], shallow=True):
                yield self._offence(call, "session.get(" if is_session else ".get(Model,", table)

    def _is_string(self, call: ast.Call) -> bool:
        """`.execute()`'s SQL is a string literal (or a module constant bound to one)."""
        if not call.args:
            return False
        arg = call.args[0]
        if isinstance(arg, ast.Name):
            arg = self.constants.get(arg.id, arg)
        return isinstance(arg, ast.JoinedStr | ast.BinOp) or (
            isinstance(arg, ast.Constant) and isinstance(arg.value, str)
        )

    def _offence(self, call: ast.Call, form: str, table: str) -> Offence:
        return Offence(self.path, call.lineno, form, table)

    def _chain(self, call: ast.Call) -> ast.AST:
        """The whole method chain a statement call starts: `select(...).where(...)...`."""
        node: ast.AST = call
        while True:
            parent = self.parents.get(node)
            chained = (isinstance(parent, ast.Attribute) and parent.value is node) or (
                isinstance(parent, ast.Call) and parent.func is node
            )
            if not chained or parent is None:
                return node
            node = parent

    def _tables_in(self, node: ast.AST, *, shallow: bool = False, depth: int = 0) -> set[str]:
        """Tenant tables an expression names: models, their columns and tables, constants."""
        found: set[str] = set()
        nodes = [node] if shallow else list(ast.walk(node))
        for item in nodes:
            if isinstance(item, ast.Name):
                if item.id in self.aliases:
                    found.add(self.models[self.aliases[item.id]])
                elif depth == 0 and not shallow and item.id in self.constants:
                    found |= self._tables_in(self.constants[item.id], depth=1)
            elif not shallow and isinstance(item, ast.Subscript):
                # `Base.metadata.tables["jobs"]`
                key = item.slice
                if isinstance(key, ast.Constant) and key.value in self.tables:
                    found.add(key.value)
            elif not shallow and isinstance(item, ast.Call) and item.args:
                # `table("workspaces", column("id"))`, `Table("jobs", metadata, ...)`
                func = item.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                first = item.args[0]
                named = isinstance(first, ast.Constant) and first.value in self.tables
                if called in {"table", "Table"} and named:
                    found.add(cast(ast.Constant, first).value)
        return found

    def _tables_in_sql(self, args: list[ast.expr]) -> set[str]:
        """Tenant tables named in the SQL text of a raw statement's first argument."""
        found: set[str] = set()
        for arg in args:
            value = self.constants.get(arg.id) if isinstance(arg, ast.Name) else arg
            for item in ast.walk(value) if value is not None else ():
                if isinstance(item, ast.Constant) and isinstance(item.value, str):
                    found |= {m.lower() for m in self.table_words.findall(item.value)}
        return found


def is_repository_module(relative: Path) -> bool:
    return (
        relative.name == "repository.py"
        or relative.as_posix() in EXEMPT_FILES
        or relative.parts[0] in EXEMPT_DIRS
    )


def lint(path: Path, shown_as: str) -> list[Offence]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return sorted(set(ModuleLint(tree, shown_as).offences()))


def source_offences() -> list[Offence]:
    found: list[Offence] = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if not is_repository_module(relative):
            found += lint(path, f"src/spawnpoint/{relative.as_posix()}")
    return found


def test_no_sql_on_tenant_tables_outside_repositories() -> None:
    offences = source_offences()
    listing = "\n".join(str(o) for o in offences)
    print(listing)
    assert not offences, (
        f"{len(offences)} statement(s) on tenant tables outside repository modules; "
        f"move them into a repository:\n{listing}"
    )


def expected_in_fixture() -> set[tuple[int, str, str]]:
    """The fixture marks the line before each one the lint must report."""
    marks: set[tuple[int, str, str]] = set()
    for number, line in enumerate(FIXTURE.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("# lint: "):
            form, _, table = line.split("# lint: ", 1)[1].rpartition(", ")
            marks.add((number + 1, form, table))
    return marks


def test_the_lint_catches_every_forbidden_form_in_the_bad_fixture() -> None:
    reported = {(o.line, o.form, o.table) for o in lint(FIXTURE, "bad_service.py")}
    expected = expected_in_fixture()
    assert reported == expected
    forms = {form for _, form, _ in expected}
    assert forms == {
        "select(",
        "session.get(",
        ".get(Model,",
        "text(",
        "insert(",
        "update(",
        "delete(",
        "exec_driver_sql(",
        '.execute("...")',
    }


def test_tenant_tables_come_from_the_metadata() -> None:
    tables = tenant_tables()
    assert {"tenants", "users", "projects", "templates", "template_versions"} <= tables
    assert {"workspaces", "workspace_events", "jobs", "tenant_usage"} <= tables
    assert "plans" not in tables
    assert tenant_models()["TemplateVersion"] == "template_versions"


def test_every_exemption_names_a_module_that_exists() -> None:
    for name in EXEMPT_FILES:
        assert (SRC / name).is_file(), name
    for name in EXEMPT_DIRS:
        assert (SRC / name).is_dir(), name


def repository_classes() -> list[type[Repository[Any]]]:
    for module in pkgutil.walk_packages(spawnpoint.__path__, "spawnpoint."):
        if module.name.endswith(".repository"):
            importlib.import_module(module.name)
    found: list[type[Repository[Any]]] = []
    pending: list[type[Repository[Any]]] = [Repository]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            pending.append(sub)
            if sub not in (ScopedRepository, PlatformRepository):
                found.append(sub)
    return sorted(set(found), key=lambda c: c.__qualname__)


def test_every_repository_chooses_a_scoped_or_a_platform_base() -> None:
    classes = repository_classes()
    assert classes
    unchosen = [
        c.__qualname__ for c in classes if not issubclass(c, ScopedRepository | PlatformRepository)
    ]
    assert unchosen == []


SCOPED = [c for c in repository_classes() if issubclass(c, ScopedRepository)]


@pytest.mark.parametrize("repository", SCOPED, ids=[c.__qualname__ for c in SCOPED])
def test_scoped_readable_binds_the_callers_tenant_and_only_operators_skip_it(
    repository: type[ScopedRepository[Any]],
) -> None:
    tenant = uuid.uuid4()
    session = cast(Any, None)  # building a statement never touches the session
    tenant_view = repository(session, TenantScope(tenant_id=tenant, all_tenants=False))
    compiled = tenant_view.readable().compile()
    assert tenant in compiled.params.values(), str(compiled)
    operator_view = repository(session, TenantScope(tenant_id=tenant, all_tenants=True))
    operator_params = operator_view.readable().compile().params.values()
    assert (tenant not in operator_params) == repository.operators_see_all
