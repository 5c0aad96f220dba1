"""The scheduler role: periodic evaluation, webhook delivery, retention and cron jobs."""
