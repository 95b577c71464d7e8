#!/usr/bin/env python3
"""Mutation check of the modules that enforce domain.md's rules: does a test fail when a rule's code is broken?

The tree is copied to a scratch directory (never mutated in place: others run tests
from the checkout), then one mutation at a time is written into the copy and a fast
test selection run against it (`pytest -x`, SQLite only). A mutant is *killed* when a
test fails (or the run times out), *survived* when the selection stays green. The
mutations are the classic ones, restricted to the functions that enforce a rule:

  delete   a statement (a call, an `if`, a `raise`, a `return`/`continue`, an assignment
           into a dict or attribute), replaced by `pass`
  compare  == <-> !=, < <-> >=, > <-> <=, in <-> not in, is <-> is not
  bool     and <-> or;  `not x` / `~x` -> `x`
  const    0, 1, 2 -> n + 1, True <-> False
  state    ItemStatus/BatchState/OrderState/RefundState.X -> the next member
  where    one condition dropped from `.where(...)` / `and_(...)`
  values   one state-bearing column dropped from `.values(...)` (RULE_COLUMNS)

Log calls (`log.*`) are not mutated: what they say is not a rule. Usage:

  python tools/mutate.py                          # every module below, 2 jobs
  python tools/mutate.py --module gateway/rules.py --jobs 1
  python tools/mutate.py --list --module gateway/flow.py   # the mutants, not run

It prints one line per mutant as it finishes and a table at the end (score = killed /
mutants); `--json FILE` keeps the results. `make mutate` runs it.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE_CLASSES = {
    "ItemStatus": ["PENDING", "SENT", "PAID", "FAILED", "CORRECTED", "REFUND_PENDING", "REFUNDED"],
    "BatchState": ["BUILDING", "BUILT", "UPLOADED", "SUBMITTING", "ACCEPTED", "REFUSED", "DONE", "RJCT"],
    "OrderState": ["FUNDED", "LOADING", "INVALID", "LOADED", "DISPATCHED", "SETTLED"],
    "RefundState": ["NEW", "SUBMITTING", "ACCEPTED", "DONE", "REFUSED", "RJCT"],
}
SWAP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
        ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
SYMBOL = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.GtE: ">=", ast.Gt: ">", ast.LtE: "<=",
          ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}

# Integers mutated: the boundaries (a timeout of 86400 s is a setting, not a rule).
SMALL_INTS = {0, 1, 2}
# Columns whose update a rule depends on (dropping a timestamp's update is no rule's concern).
RULE_COLUMNS = {"status", "state", "batch_no", "orig_batch_no", "retry_requested", "results_pending",
                "amount", "total_count", "total_amount", "return_serial", "seq", "order_no"}

# The flow's tests that drive the rules end to end (loopback, in-process, SQLite).
FLOW_TESTS = ["tests/test_rules_flow.py", "tests/test_flow_cnbank.py",
              "tests/test_e2e_correction.py"]


@dataclass
class Target:
    functions: set[str] | None   # None: every function of the module
    tests: list[str]             # fastest and most pointed first: `-x` stops at the first failure
    k: str = ""                  # pytest -k expression narrowing the selection


TARGETS: dict[str, Target] = {
    "gateway/rules.py": Target({"check_conservation"}, ["tests/test_rules_conservation.py"]),
    # The submit -> ask -> accept/reject/resend decision for batches, refunds and disputes.
    "gateway/transitions.py": Target(None, ["tests/test_transitions.py"]),
    "gateway/late_returns.py": Target(None, [
        "tests/test_rules_flow.py::test_a_late_return_that_matches_no_paid_item_is_alarmed_not_applied",
        "tests/test_rules_flow.py::test_done_batches_are_asked_for_returns_at_the_low_rate_inside_the_window_only",
        "tests/test_rules_flow.py::test_a_late_return_is_applied_and_its_item_paid_again_only_after_correction",
        "tests/test_flow_cnbank.py::test_late_return_turns_paid_back_to_failed_once_then_correction_pays_again",
        "tests/test_rules_conservation.py::test_a_late_return_on_an_unbalanced_order_is_refused",
        "tests/test_rules_flow.py::test_rjct_of_a_retry_batch_sends_only_its_own_items_again"]),
    "gateway/refund_flow.py": Target(None, [
        "tests/test_rules_refunds.py",
        "tests/test_rules_flow.py::test_a_refund_returns_only_the_failed_items_and_a_rejected_one_gives_them_back",
        "tests/test_rules_commands.py::test_retry_and_refund_take_only_the_items_the_rules_allow",
        "tests/test_e2e_correction.py"]),
    "gateway/flow.py": Target({"_orders_needing_batch", "_new_batch", "create_retry_batch", "_accept",
                               "_reject", "_release", "_apply_results"},
                              ["tests/test_rules_flow.py::test_rjct_of_a_pay_batch_sends_every_item_again_once",
                               "tests/test_rules_flow.py::test_rjct_of_a_retry_batch_sends_only_its_own_items_again",
                               "tests/test_rules_conservation.py::test_acceptance_that_would_unbalance_the_order_is_refused_and_alarmed",
                               "tests/test_rules_conservation.py::test_results_that_would_unbalance_the_order_are_refused_whole_and_alarmed",
                               "tests/test_rules_commands.py::test_retry_and_refund_take_only_the_items_the_rules_allow",
                               "tests/test_rules_flow.py::test_a_retry_takes_only_its_own_orders_corrected_items",
                               "tests/test_flow_cnbank.py::test_lost_bp01_reply_is_resolved_by_bq01_not_by_resending",
                               "tests/test_rules_flow.py::test_a_late_return_is_applied_and_its_item_paid_again_only_after_correction",
                               "tests/test_result_file_rejection.py"]),
    # item.correct whole (evidence, state, reason code); of order.retry and refund.request the
    # transaction that picks the items (their nested `request`), not the parameter parsing.
    "gateway/commands.py": Target({"item_correct", "request"}, [
        "tests/test_rules_commands.py",
        "tests/test_rules_conservation.py::test_rpc_changes_that_would_unbalance_the_order_change_nothing",
        "tests/test_rules_flow.py::test_rjct_of_a_retry_batch_sends_only_its_own_items_again",
        "tests/test_rules_flow.py::test_a_refund_returns_only_the_failed_items_and_a_rejected_one_gives_them_back",
        "tests/test_rules_flow.py::test_a_retry_takes_only_its_own_orders_corrected_items",
        "tests/test_rpc_races.py"]),
    # The WHERE clauses the steps and the RPC use to pick items (moved out of commands.py,
    # flow.py, refund_flow.py and late_returns.py into the store): their tests together.
    "gateway/store/items.py": Target(
        {"lock", "correct", "corrected_waiting", "mark_refund_pending", "seqs_of_batch", "_of_refund",
         "refund_refused", "refunded", "returned_late", "pending_for_pay", "corrected_for_retry",
         "put_in_batch", "sent", "release", "sent_by"}, [
            "tests/test_rules_commands.py", "tests/test_rules_refunds.py", "tests/test_rpc_races.py",
            "tests/test_rules_flow.py", "tests/test_rules_conservation.py", "tests/test_result_file_rejection.py",
            "tests/test_flow_cnbank.py::test_late_return_turns_paid_back_to_failed_once_then_correction_pays_again",
            "tests/test_pg_plans.py"]),
    "gateway/store/orders.py": Target({"needing_batch", "to_retry", "with_corrected_waiting"}, [
        "tests/test_store_orders.py",
        "tests/test_rules_flow.py", "tests/test_scheduler.py", "tests/test_rules_commands.py"]),
    "gateway/validation.py": Target(None, ["tests/test_validation.py", "tests/test_validation_fastpath.py",
                                           "tests/test_rules_validation.py"]),
}


@dataclass
class Mutant:
    module: str
    index: int
    line: int
    function: str
    what: str
    outcome: str = ""
    seconds: float = 0.0
    failed: str = ""
    source_line: str = field(default="", repr=False)


def _is_log_call(node: ast.AST) -> bool:
    call = node.value if isinstance(node, ast.Expr) else node
    return (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name) and call.func.value.id == "log")


class Mutator:
    """Walks a module; counts the mutation sites in the target functions and applies number `target`.

    The walk is deterministic, so the same index names the same mutation in a fresh parse.
    """

    def __init__(self, functions: set[str] | None, target: int = -1):
        self.functions = functions
        self.target = target
        self.count = 0
        self.sites: list[tuple[int, str, str]] = []   # (line, function, description)
        self.applied: tuple[int, str, str] | None = None
        self._fn: list[str] = []

    def _site(self, node: ast.AST, what: str) -> bool:
        here = (getattr(node, "lineno", 0), self._fn[0] if self._fn else "", what)
        self.sites.append(here)
        hit = self.count == self.target
        self.count += 1
        if hit:
            self.applied = here
        return hit

    def _active(self) -> bool:
        return bool(self._fn)

    def visit(self, node: ast.AST) -> ast.AST:
        entered = False
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                self._fn or self.functions is None or node.name in self.functions):
            self._fn.append(node.name)
            entered = True
        if _is_log_call(node) or isinstance(node, (ast.JoinedStr, ast.Slice)):
            return node
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                for i, child in enumerate(value):
                    if isinstance(child, ast.stmt) and self._active() and self._deletable(child):
                        if self._site(child, f"delete `{_short(child)}`"):
                            value[i] = ast.copy_location(ast.Pass(), child)
                            continue
                    if isinstance(child, ast.AST):
                        value[i] = self.visit(child)
            elif isinstance(value, ast.AST):
                setattr(node, name, self.visit(value))
        if entered:
            self._fn.pop()
        if not self._active() or not isinstance(node, ast.expr):
            return node
        return self._mutate_expr(node)

    @staticmethod
    def _deletable(s: ast.stmt) -> bool:
        if isinstance(s, ast.Expr):
            return not (isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)) \
                and not _is_log_call(s)
        if isinstance(s, ast.Assign):
            return all(isinstance(t, (ast.Subscript, ast.Attribute)) for t in s.targets)
        return isinstance(s, (ast.If, ast.Raise, ast.AugAssign, ast.Continue, ast.Return))

    def _mutate_expr(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in SWAP and self._site(
                        node, f"`{SYMBOL[type(op)]}` -> `{SYMBOL[SWAP[type(op)]]}` in `{_short(node)}`"):
                    node.ops[i] = SWAP[type(op)]()
                    return node
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            if self._site(node, f"`{'and' if isinstance(node.op, ast.And) else 'or'}` -> "
                                f"`{'or' if isinstance(other, ast.Or) else 'and'}` in `{_short(node)}`"):
                node.op = other
                return node
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
            if self._site(node, f"drop the negation of `{_short(node)}`"):
                return node.operand
        elif isinstance(node, ast.Constant) and (type(node.value) is bool or node.value in SMALL_INTS):
            if type(node.value) is bool:
                if self._site(node, f"{node.value} -> {not node.value}"):
                    return ast.copy_location(ast.Constant(not node.value), node)
            elif self._site(node, f"{node.value} -> {node.value + 1}"):
                return ast.copy_location(ast.Constant(node.value + 1), node)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in STATE_CLASSES and node.attr in STATE_CLASSES[node.value.id]):
            members = STATE_CLASSES[node.value.id]
            nxt = members[(members.index(node.attr) + 1) % len(members)]
            if self._site(node, f"{node.value.id}.{node.attr} -> {node.value.id}.{nxt}"):
                node.attr = nxt
                return node
        elif isinstance(node, ast.Call):
            fname = node.func.attr if isinstance(node.func, ast.Attribute) else \
                node.func.id if isinstance(node.func, ast.Name) else ""
            if fname in ("where", "and_") and len(node.args) >= 2:
                for i, arg in enumerate(node.args):
                    if self._site(node, f"drop `{_short(arg)}` from {fname}(...)"):
                        del node.args[i]
                        return node
            if fname == "values" and node.keywords:
                for i, kw in enumerate(node.keywords):
                    if kw.arg in RULE_COLUMNS and self._site(node, f"drop `{kw.arg}=` from values(...)"):
                        del node.keywords[i]
                        return node
        return node


def _short(node: ast.AST, n: int = 70) -> str:
    text = ast.unparse(node).splitlines()[0] if not isinstance(node, ast.stmt) else \
        ast.unparse(node).splitlines()[0]
    return text if len(text) <= n else text[:n - 3] + "..."


# The sources mutated: read once (from the first scratch copy when running), so that others
# editing the checkout during a run can neither shift the mutants' numbers nor leak in.
SOURCES: dict[str, str] = {}


def source(module: str) -> str:
    if module not in SOURCES:
        SOURCES[module] = open(os.path.join(ROOT, module), encoding="utf-8").read()
    return SOURCES[module]


def mutants_of(module: str, target: Target) -> list[Mutant]:
    src = source(module)
    m = Mutator(target.functions)
    m.visit(ast.parse(src))
    lines = src.splitlines()
    return [Mutant(module, i, line, fn, what, source_line=lines[line - 1].strip() if line else "")
            for i, (line, fn, what) in enumerate(m.sites)]


def mutated_source(module: str, target: Target, index: int) -> str:
    src = source(module)
    m = Mutator(target.functions, index)
    tree = m.visit(ast.parse(src))
    if m.applied is None:
        raise ValueError(f"{module}: no mutant {index}")
    return ast.unparse(ast.fix_missing_locations(tree))


def copy_tree(dest: str) -> None:
    shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "var", "__pycache__", "*.egg-info", ".pytest_cache", "build", ".hypothesis"))


def run_tests(tree: str, target: Target, timeout: float) -> tuple[str, float, str]:
    env = dict(os.environ, PYTHONPATH=tree, CI="true", PYTHONDONTWRITEBYTECODE="1")
    k = "not postgres" + (f" and ({target.k})" if target.k else "")
    tests = target.tests
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q", "--no-header",
           "-k", k, "--rootdir", tree, f"--basetemp={tree}/.t",
           *[t for t in tests if os.path.exists(os.path.join(tree, t.split("::")[0]))]]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout,
                           start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0, ""
    took = time.monotonic() - t0
    failed = next((ln.split(" ", 1)[1] for ln in p.stdout.splitlines() if ln.startswith(("FAILED ", "ERROR "))), "")
    if p.returncode == 0:
        return "survived", took, ""
    if p.returncode in (1, 2):
        return "killed", took, failed[:160]
    return f"error rc={p.returncode}", took, (p.stdout + p.stderr)[-300:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", action="append", choices=sorted(TARGETS), help="module(s) to mutate")
    ap.add_argument("--only", type=int, action="append", help="mutant index(es) (with one --module)")
    ap.add_argument("--function", action="append", help="only mutants in these functions")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per mutant run")
    ap.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = ap.parse_args(argv)
    modules = args.module or list(TARGETS)
    scratch = None
    if not args.list:
        scratch = tempfile.mkdtemp(prefix="mut-rules-")
        copy_tree(os.path.join(scratch, "w0"))
        for mod in modules:
            SOURCES[mod] = open(os.path.join(scratch, "w0", mod), encoding="utf-8").read()
    todo = [mu for mod in modules for mu in mutants_of(mod, TARGETS[mod])]
    if args.only:
        todo = [mu for mu in todo if mu.index in args.only]
    if args.function:
        todo = [mu for mu in todo if mu.function in args.function]
    if args.list:
        for mu in todo:
            print(f"{mu.module}:{mu.line} #{mu.index} [{mu.function}] {mu.what}")
        print(f"{len(todo)} mutants")
        return 0

    trees: queue.Queue[str] = queue.Queue()
    for j in range(args.jobs):
        if j:
            shutil.copytree(os.path.join(scratch, "w0"), os.path.join(scratch, f"w{j}"), symlinks=True)
        trees.put(os.path.join(scratch, f"w{j}"))
    print(f"scratch copies in {scratch}; {len(todo)} mutants in {len(modules)} modules", flush=True)

    # The unmutated selection must pass (written back through ast.unparse, as the mutants are).
    tree = trees.get()
    for mod in modules:
        path = os.path.join(tree, mod)
        original = SOURCES[mod]
        open(path, "w", encoding="utf-8").write(ast.unparse(ast.parse(original)))
        outcome, took, failed = run_tests(tree, TARGETS[mod], args.timeout * 2)
        open(path, "w", encoding="utf-8").write(original)
        print(f"baseline {mod}: {outcome} in {took:.0f} s {failed}", flush=True)
        if outcome != "survived":
            print(f"the unmutated test selection of {mod} does not pass: fix that first", file=sys.stderr)
            return 2
    trees.put(tree)

    lock = threading.Lock()

    def one(mu: Mutant) -> Mutant:
        tree = trees.get()
        path = os.path.join(tree, mu.module)
        original = SOURCES[mu.module]
        try:
            open(path, "w", encoding="utf-8").write(mutated_source(mu.module, TARGETS[mu.module], mu.index))
            mu.outcome, mu.seconds, mu.failed = run_tests(tree, TARGETS[mu.module], args.timeout)
        finally:
            open(path, "w", encoding="utf-8").write(original)
            trees.put(tree)
        with lock:
            print(f"{mu.outcome:9} {mu.seconds:5.0f}s {mu.module}:{mu.line} #{mu.index} [{mu.function}] "
                  f"{mu.what}" + (f"  <- {mu.failed}" if mu.failed and mu.outcome != 'killed' else ""),
                  flush=True)
        return mu

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(one, todo))
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)

    print("\n| module | mutants | killed | timeout | survived | score |")
    print("|---|---:|---:|---:|---:|---:|")
    for mod in modules:
        ms = [m for m in done if m.module == mod]
        if not ms:
            continue
        k = sum(m.outcome == "killed" for m in ms)
        t = sum(m.outcome == "timeout" for m in ms)
        s = sum(m.outcome == "survived" for m in ms)
        print(f"| {mod} | {len(ms)} | {k} | {t} | {s} | {100 * (k + t) / len(ms):.0f}% |")
    survivors = [m for m in done if m.outcome not in ("killed", "timeout")]
    if survivors:
        print("\nsurvived:")
        for m in survivors:
            print(f"  {m.module}:{m.line} #{m.index} [{m.function}] {m.outcome}: {m.what}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([m.__dict__ for m in done], f, ensure_ascii=False, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
