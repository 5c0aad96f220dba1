"""dashboard sign-outs end the session everywhere

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('dashboard_revoked_sessions',
    sa.Column('session_id', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('session_id', name=op.f('pk_dashboard_revoked_sessions'))
    )


def downgrade() -> None:
    op.drop_table('dashboard_revoked_sessions')
