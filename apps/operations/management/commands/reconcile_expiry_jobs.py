import json
from argparse import ArgumentParser
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from tabulate import tabulate

from escape_rooms_backend.timeline import ReconcileReport, deadlines_reconcile


def _time(value: datetime | None) -> str:
    return "" if value is None else timezone.localtime(value).isoformat(timespec="milliseconds")


class Command(BaseCommand):
    help = (
        "Compare every deadline of every reservation (the hold's end, ...) with the jobs in the "
        "job store and report drift "
        "(exit 1 when there is any). With --fix, repair it (exit 1 when something could not be "
        "repaired). Safe to run while a scheduler runs. Same as scripts/reconcile.py."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--fix", action="store_true", help="Repair the drift found.")
        parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

    def handle(self, *args: Any, **options: Any) -> None:
        fix = options["fix"]
        try:
            report = deadlines_reconcile(fix=fix)
        except Exception as exc:
            raise CommandError(f"Could not read the job store: {exc}", returncode=2) from exc
        self.stdout.write(self._json(report) if options["json"] else self._table(report))
        if fix and not report.all_repaired:
            raise CommandError("Some drift could not be repaired; see above.", returncode=1)
        if not fix and not report.consistent:
            raise CommandError("Drift found; run with --fix to repair it.", returncode=1)

    def _table(self, report: ReconcileReport) -> str:
        kinds = ", ".join(
            f"{kind}: {needed} needed, {report.jobs.get(kind, 0)} jobs"
            for kind, needed in report.needed.items()
        )
        summary = f"Checked the deadlines ({kinds}) at {_time(report.checked_at)}: "
        if report.consistent:
            return summary + "consistent."
        headers = ["deadline", "drift", "reservation", "job", "due at", "job run time"]
        if report.fixed:
            headers.append("repair")
        rows = []
        for item in report.drift:
            row = [
                item.deadline,
                item.kind.value,
                item.reservation_id,
                item.job_id,
                _time(item.due_at),
                _time(item.run_time),
            ]
            if report.fixed:
                row.append(item.action)
            rows.append(row)
        return f"{summary}found {len(report.drift)} drifts.\n{tabulate(rows, headers=headers)}"

    def _json(self, report: ReconcileReport) -> str:
        return json.dumps(
            {
                "checked_at": report.checked_at.isoformat(),
                "needed": report.needed,
                "jobs": report.jobs,
                "consistent": report.consistent,
                "fixed": report.fixed,
                "drift": [
                    {
                        "deadline": item.deadline,
                        "kind": item.kind.value,
                        "reservation_id": item.reservation_id,
                        "job_id": item.job_id,
                        "due_at": item.due_at and item.due_at.isoformat(),
                        "run_time": item.run_time and item.run_time.isoformat(),
                        "repaired": item.repaired,
                        "action": item.action,
                    }
                    for item in report.drift
                ],
            },
            indent=2,
        )
