"""Objects read back from rendered pixels alone: the independent check of the synthetic tasks' labels."""
import numpy as np


def components(image, rgb, tol=40):
    """Bounding boxes ``(x0, y0, x1, y1)`` of the 4-connected groups of pixels within ``tol`` of
    ``rgb``, read from the image alone (objects never touch: the generator keeps a 2 px gap)."""
    close = (np.abs(image.astype(int) - np.asarray(rgb)[None, None, :]) <= tol).all(-1)
    seen = np.zeros_like(close)
    boxes = []
    for y0, x0 in zip(*np.nonzero(close)):
        if seen[y0, x0]:
            continue
        stack, ys, xs = [(y0, x0)], [], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < close.shape[0] and 0 <= nx < close.shape[1] and close[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        boxes.append((min(xs), min(ys), max(xs), max(ys)))
    return boxes
