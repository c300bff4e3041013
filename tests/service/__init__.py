"""Tests of service/: units with fakes of our own classes, and routes against a live server."""
