"""The demo behind `make demo` names the right culprits."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from whodunit.demo import run


@pytest.mark.slow
class TestDemo:
    def test_demo_captures_the_app_and_the_person(self) -> None:
        """The app's writes carry its user; the mass DELETE and the DROP show the roles in psql."""
        out = io.StringIO()
        rows = run(console=Console(file=out, width=120))
        by_what = {(r["what"], r["table_name"]): r for r in rows}
        insert = by_what[("INSERT", "users")]
        delete = by_what[("DELETE", "users")]
        drop = by_what[("DROP TABLE", "games")]
        assert ("gameclub_app", "admin@gameclub") == (
            insert["db_current_user"],
            insert["actor_name"],
        )
        who = (delete["db_current_user"], delete["application_name"], delete["actor_name"])
        assert (("ops_dev", "psql", None), 39) == (who, delete["rows"])
        assert ("postgres", 3) == (drop["db_current_user"], drop["rows"])
        assert ("DELETE", "UserProfile") in by_what
        assert "ops_dev via psql: DELETE FROM users" in out.getvalue()
