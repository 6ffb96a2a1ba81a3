"""
The project's modules import one another without a cycle.

A cycle held together by imports inside functions works until someone moves
one of them to the top of its module; it also means no module of the cycle
can be understood, tested or loaded without the others. grimp reads every
import statement, those inside functions included. The layers and the
library's independence are import-linter contracts (``make lint``); this
test keeps the stricter rule, no cycle at all between modules, in the suite.
"""

from collections.abc import Iterator

import grimp

PACKAGES = ("apps", "config", "escape_rooms_backend")


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """
    Return each set of modules that import one another in a circle, sorted.

    The strongly connected components of more than one module (Tarjan's
    algorithm, iterative so that a long chain of imports cannot exhaust the
    recursion limit).
    """
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []

    def imports_of(module: str) -> Iterator[str]:
        return iter(sorted(graph.find_modules_directly_imported_by(module)))

    for root in sorted(graph.modules):
        if root in index:
            continue
        index[root] = lowlink[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, imports_of(root))]
        while work:
            module, imported = work[-1]
            for other in imported:
                if other not in index:
                    index[other] = lowlink[other] = len(index)
                    stack.append(other)
                    on_stack.add(other)
                    work.append((other, imports_of(other)))
                    break
                if other in on_stack:
                    lowlink[module] = min(lowlink[module], index[other])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[module])
                if lowlink[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return sorted(cycles)


def describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    """The imports that close ``cycle``, one a line, with their line numbers."""
    members = set(cycle)
    lines = [f"Import cycle among {', '.join(cycle)}:"]
    for importer in cycle:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                lines.append(f"  {importer} -> {imported} (line {detail['line_number']})")
    return "\n".join(lines)


def test_no_module_of_the_project_is_part_of_an_import_cycle():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)

    cycles = import_cycles(graph)

    assert not cycles, "\n".join(describe(graph, cycle) for cycle in cycles)


def test_the_cycle_check_names_the_modules_of_every_cycle():
    graph = grimp.ImportGraph()
    for importer, imported in [
        ("pkg.services", "pkg.signals"),
        ("pkg.signals", "pkg.jobs"),
        ("pkg.jobs", "pkg.services"),  # a circle of three
        ("pkg.jobs", "pkg.models"),
        ("pkg.views", "pkg.services"),
        ("pkg.admin", "pkg.forms"),
        ("pkg.forms", "pkg.admin"),  # a circle of two
        ("pkg.selectors", "pkg.models"),
    ]:
        graph.add_import(importer=importer, imported=imported)

    assert import_cycles(graph) == [
        ["pkg.admin", "pkg.forms"],
        ["pkg.jobs", "pkg.services", "pkg.signals"],
    ]
