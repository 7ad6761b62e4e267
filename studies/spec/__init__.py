"""Study specs: the TOML files of studies/builtin/ (or the user's own), loaded into typed, validated
dataclasses (`study`): arms, scientific, nuisance and fixed parameters, profiles, and the grid
points a profile trains.
"""
