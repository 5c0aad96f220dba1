"""Sessions are opened and committed only at the edge (a request or a job).

Services receive a session and only flush; `session_scope` commits when the
block succeeds and rolls back when it raises. The one exception is
`monitor.alerting.delivery.deliver_one`, which commits before its HTTP POST
so that no transaction stays open across the network call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
