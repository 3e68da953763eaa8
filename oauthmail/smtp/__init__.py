"""Sending mail: ESMTP client, durable queue, local submission server."""
