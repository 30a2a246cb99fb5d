"""The data path: what runs for every byte and every callback, on the event loop.

``protocols`` holds the wrapping protocols the real transport calls;
``proxy`` the proxy transports the app holds; both add to a connection's
``record`` (plain integer fields) and nothing else. ``registry`` keeps the
live records and the totals of closed ones for the export path to read.
"""
