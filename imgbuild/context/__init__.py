"""The build context: what COPY and ADD may read, and a digest of exactly that.

``source.py`` selects sources the way BuildKit does and hashes them;
``statcache.py`` remembers content digests by stat identity; ``dockerignore.py``
is Docker's pattern matcher over ``gopath.py`` (Go's path and glob rules)
and ``globmatch.py`` (matching in linear time); ``buildfiles.py`` reads the
Dockerfile and the ignore file.
"""
