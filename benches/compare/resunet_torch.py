"""kseg's Res-U-Net (docs/METHOD.md §2) in PyTorch, with the module tree of
kseg's checkpoint names, so that a kseg model file's weights load by name
with `load_state_dict`. Shared by the benches in this folder.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def res_unet(base, depth, cin=3, classes=3, slope=0.2):
    """A new `ResUNet` (PyTorch's default initialisation)."""
    def conv3(cin, cout, stride):
        return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)

    class ConvBnAct(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv, self.bn = conv3(cin, cout, stride), nn.BatchNorm2d(cout)

        def forward(self, x):
            return F.leaky_relu(self.bn(self.conv(x)), slope)

    class ResDownSample(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = conv3(c, 2 * c, 2), nn.BatchNorm2d(2 * c)
            self.conv2, self.bn2 = conv3(2 * c, 2 * c, 1), nn.BatchNorm2d(2 * c)
            self.shortcut = ConvBnAct(c, 2 * c, 2)

        def forward(self, x):
            m = F.leaky_relu(self.bn1(self.conv1(x)), slope)
            return F.leaky_relu(self.bn2(self.conv2(m)) + self.shortcut(x), slope)

    class CatResBlock(nn.Module):
        def __init__(self, c, s):
            super().__init__()
            m = c // 4 + s // 2
            self.skip = nn.Conv2d(s, s // 2, 1)
            self.conv1, self.bn1 = conv3(m, m, 1), nn.BatchNorm2d(m)
            self.conv2, self.bn2 = conv3(m, m, 1), nn.BatchNorm2d(m)

        def forward(self, x, skip):
            cat = torch.cat([F.pixel_shuffle(x, 2), self.skip(skip)], 1)
            m = F.leaky_relu(self.bn1(self.conv1(cat)), slope)
            return F.leaky_relu(self.bn2(self.conv2(m)) + cat, slope)

    class CatConv(nn.Module):
        def __init__(self, c, base, classes):
            super().__init__()
            self.conv, self.bn = conv3(c // 4 + base, base, 1), nn.BatchNorm2d(base)
            self.classifier = nn.Conv2d(base, classes, 1)

        def forward(self, x, first):
            cat = torch.cat([F.pixel_shuffle(x, 2), first], 1)
            return self.classifier(F.leaky_relu(self.bn(self.conv(cat)), slope))

    class ResUNet(nn.Module):
        def __init__(self, base, depth, cin, classes):
            super().__init__()
            self.conv0 = ConvBnAct(cin, base, 1)
            chans = [base * 2**i for i in range(depth + 1)]
            self.down = nn.ModuleList(ResDownSample(chans[i]) for i in range(depth))
            ups, c = [], chans[depth]
            for j in range(depth - 1):
                s = chans[depth - 1 - j]
                ups.append(CatResBlock(c, s))
                c = c // 4 + s // 2
            self.up = nn.ModuleList(ups)
            self.head = CatConv(c, base, classes)

        def forward(self, x):
            first = self.conv0(x)
            feats, h = [], first
            for d in self.down:
                h = d(h)
                feats.append(h)
            for j, u in enumerate(self.up):
                h = u(h, feats[len(feats) - 2 - j])
            return self.head(h, first)

    return ResUNet(base, depth, cin, classes)
