"""The HTTP edge: admission, the embed routes, the other routers, schemas, responses and errors."""
