"""Telling the consumer container that its credentials changed, through the Docker Engine
API, and checking that it survived. Only this package talks to Docker."""

from credsync.notify.notifier import Delivery, Notifier

__all__ = ["Delivery", "Notifier"]
