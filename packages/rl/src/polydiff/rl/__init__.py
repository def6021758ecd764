"""polydiff.rl: trajectory and action diffusion on gymnasium simulators.

- :mod:`polydiff.rl.envs`: PointMaze (U-maze, medium, large), Pendulum, the two-path toy, experts;
- :mod:`polydiff.rl.datasets`: generators, Minari storage, normalisation, training windows;
- :mod:`polydiff.rl.diffuser`: Diffuser planning (Janner et al. 2022) with value guidance;
- :mod:`polydiff.rl.policy`: Diffusion Policy (Chi et al. 2023) and an MSE baseline;
- :mod:`polydiff.rl.evaluate`: rollouts, success, normalised score, NFE and latency.
"""
