"""The admin dashboard: server-rendered pages (Jinja2 + inline SVG), no JavaScript needed.

Pages read through `repository` (the dashboard's own aggregates) and the
feature services; actions (evaluate, recalibrate, activate, webhook test)
call those services and redirect after the POST with a flash message.
"""
