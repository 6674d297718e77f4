"""Registries: references, credentials, the distribution API client, pull and push.

    from imgbuild.registry.pull import pull
    from imgbuild.registry.push import push
    image = pull(store, "127.0.0.1:5000/app:1")
    descriptor = push(store, "app:1", "127.0.0.1:5000/team/app:1")

See docs/registry.md for references, credentials, insecure hosts and retries.
The package imports nothing itself, so that using ``reference`` does not load
``requests``.
"""

