"""An independent, deliberately plain implementation of the paper's equations.

Written from the paper's equations without importing the library, so that the library's
layers and cells can be checked against it. One function per cell step, one loop per
time step, one loop per layer and direction. Only full-length (unpadded) batches.
"""

import torch


def _coefficient(k, restart):
    if restart > 0:
        k = (k - 1) % restart + 1
    return (k - 1.0) / (k + 2.0)


def reference_step(kind, rule, hp, x, h, c, v, m, k, W, U, b_ih, b_hh, nonlinearity="tanh"):
    """One step at time index k (1-based). Returns h, c, v, m."""
    u = x @ W.T + (b_ih if b_ih is not None else 0.0)
    rec = h @ U.T + (b_hh if b_hh is not None else 0.0)
    s = hp.get("step_size")
    if rule == "momentum":
        v = hp["momentum"] * v + s * u
        drive = v
    elif rule in ("adam", "rmsprop"):
        mu = hp["momentum"] if rule == "adam" else 0.0
        v = mu * v + s * u
        m = hp["beta"] * m + (1.0 - hp["beta"]) * u * u
        drive = v / torch.sqrt(m + 1e-16)
    elif rule == "restart":
        v = _coefficient(k, hp["restart"]) * v + s * u
        drive = v
    elif rule == "nesterov":
        v_new = rec - s * u
        pre = v_new + _coefficient(k, hp["restart"]) * (v_new - v)
        v = v_new
    else:
        raise ValueError(rule)

    if kind == "lstm":
        gates = pre if rule == "nesterov" else drive + rec
        H = h.shape[-1]
        i, f, g, o = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:3 * H], gates[..., 3 * H:]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    elif kind == "rnn":
        gates = pre if rule == "nesterov" else drive + rec
        h = torch.tanh(gates) if nonlinearity == "tanh" else torch.relu(gates)
    elif kind == "gru":
        H = h.shape[-1]
        r = torch.sigmoid(drive[..., :H] + rec[..., :H])
        z = torch.sigmoid(drive[..., H:2 * H] + rec[..., H:2 * H])
        n = torch.tanh(drive[..., 2 * H:] + r * rec[..., 2 * H:])
        h = (1 - z) * n + z * h
    return h, c, v, m


def reference_layer(kind, rule, hp, params, x, num_layers, bidirectional, h0=None, c0=None,
                    nonlinearity="tanh"):
    """Run a whole (time, batch, features) batch. ``params`` maps torch's parameter names
    to tensors; ``hp`` maps ``(layer, reverse)`` or None to that stack's hyperparameters.
    Returns output, h_n, c_n, v_n, m_n."""
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    H = params["weight_hh_l0"].shape[1]
    layer_input = x
    hs, cs, vs, ms = [], [], [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            idx = layer * D + d
            W, U = params["weight_ih" + sfx], params["weight_hh" + sfx]
            b_ih, b_hh = params.get("bias_ih" + sfx), params.get("bias_hh" + sfx)
            h = x.new_zeros(B, H) if h0 is None else h0[idx]
            c = x.new_zeros(B, H) if c0 is None else c0[idx]
            v = x.new_zeros(B, G * H)
            m = x.new_zeros(B, G * H)
            stack_hp = hp[(layer, bool(d))] if isinstance(hp, dict) and (layer, bool(d)) in hp else hp
            seq = layer_input if d == 0 else layer_input.flip(0)
            out = []
            for t in range(T):
                h, c, v, m = reference_step(kind, rule, stack_hp, seq[t], h, c, v, m, t + 1, W, U, b_ih, b_hh,
                                            nonlinearity)
                out.append(h)
            out = torch.stack(out)
            outs.append(out if d == 0 else out.flip(0))
            hs.append(h), cs.append(c), vs.append(v), ms.append(m)
        layer_input = torch.cat(outs, dim=-1)
    return layer_input, torch.stack(hs), torch.stack(cs), torch.stack(vs), torch.stack(ms)
