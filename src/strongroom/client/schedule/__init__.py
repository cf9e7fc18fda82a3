"""Scheduled backups: the timer/agent/task files for each platform, the password source for
unattended runs, the runner with retries and its status file.

Nothing here imports a platform-only module at load time, so every generator can be built and
tested on any OS; only the code that activates a schedule calls the platform's own tool.
"""
